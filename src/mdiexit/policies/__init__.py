"""Decision policies (DESIGN §3): pure code, no I/O, shared by the runtime and the simulator."""
