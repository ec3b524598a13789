from gantui.cli import app

app(prog_name="gantui")
