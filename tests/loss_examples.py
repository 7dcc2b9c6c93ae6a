"""The 2x3 worked example of the loss tests: logits and targets of two images, three classes."""
LOGITS = [[2.0, -1.0, 0.5], [1.0, 4.0, -2.0]]
TARGETS = [[1, 0, 0], [0, 1, 1]]
