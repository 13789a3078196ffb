"""The NEST backend (PyNN + NEST): the backend, its cell models, in-place weight updates, the
kernel handles they share, and the self-test of the NEST models it relies on."""
