# A working day, 08:00 to 18:00: steady morning and afternoon, a lunch dip, an end-of-day
# burst as the office closes its orders. Times are from 08:00.
name      working-day
horizon   10h
sample    1m

queue conferencia
  rate        0h   4h    300    # 08:00-12:00
  rate        4h   5h    60     # lunch
  rate        5h   9h    300    # 13:00-17:00
  rate        9h   9.5h  1200   # 17:00-17:30: the end-of-day burst
  rate        9.5h 10h   60
  duration    20s 0.4
  init        8s
  failure     0.01
  target_wait 5m

queue emissao
  rate        0h 10h 100
  duration    30s 0.3
  init        8s
  target_wait 5m
