# A flood: ten times the usual arrivals for ten minutes (a batch re-sent by the poller).
name      flood
horizon   3h
sample    30s

queue conferencia
  rate        0h    1h    200
  rate        1h    70m   2000
  rate        70m   3h    200
  duration    30s 0.3
  init        8s
  target_wait 5m
