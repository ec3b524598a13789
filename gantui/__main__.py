from gantui import procs
from gantui.cli import app

procs.follow_parent()  # a child of bench, sweep or the torchrun launcher ends with it
app(prog_name="gantui")
