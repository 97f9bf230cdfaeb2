# The host's scenario: 322 verification jobs and 3 issuing jobs land at once on an idle pool.
# Browser jobs of ~20 s (verification) and ~30 s (issuing, a PDF), a 8 s login per worker.
name      host
horizon   1h
sample    10s

queue conferencia
  burst       1s 322
  duration    20s 0.3
  init        8s
  target_wait 10m

queue emissao
  burst       1s 3
  duration    30s 0.3
  init        8s
  target_wait 10m
