"""The SpiNNaker backend (PyNN + sPyNNaker): the backend, its placement plan and capacity check,
the sPyNNaker config file, and the fixed-point emulation of a board in torch."""
