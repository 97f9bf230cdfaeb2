# The target site gets slow: for one hour every job takes twice as long.
name      slow-site
horizon   4h
sample    30s

queue conferencia
  rate        0h 4h 400
  duration    30s 0.3
  slow        1h 2h 2
  init        8s
  target_wait 5m
