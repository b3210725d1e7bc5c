"""What a user runs on a fitted model: load, evaluate, predict to a folder, calibrate, benchmark."""
