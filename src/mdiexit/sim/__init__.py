"""The discrete-event simulator (DESIGN §4): SimPy's virtual clock driving the runtime's own cores and policies.
`mdiexit simulate` (cli/sim.py) runs it; it writes what `mdiexit run` writes."""
