"""`tdet capacity`: how many cameras at F fps one server holds with every frame answered within its deadline.
schedule.py: the frames and one open-loop level (run_level, what a config search calls per trial);
search.py: doubling then bisection over the camera count; report.py: JSON, CSV, plot and HTML; cli.py: the command."""
