"""What trains: the flat loop, the models, losses, data streams and the control seam."""
