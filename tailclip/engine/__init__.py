"""The runner: the training loop, evaluation, checkpoints and run files, the loader and image
cache, several processes, logging and stop signals. It serves the method (`tailclip`) and
never changes what it computes."""
