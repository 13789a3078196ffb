"""``fsnn tune``: the search (Ray Tune over T, V_th, leak, lr, ...), one trial's training
function, and the report (best trial's artifacts, the search's plot)."""
