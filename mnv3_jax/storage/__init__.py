"""The on-disk formats of train states and weights, and their verified reads."""
