"""Hardware in the loop: training whose forward rates come from a simulator (the loop) run on a
pool of Ray actors (the pool)."""
