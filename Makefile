# The two commands a fresh machine needs (README): `make demo` and `make test`.
# Both create .venv/ on first use.
PY := .venv/bin/python
VENV_STAMP := .venv/.installed

.PHONY: venv demo test bench clean monitor

venv: $(VENV_STAMP)

$(VENV_STAMP): pyproject.toml infra/setup/bootstrap.sh infra/setup/constraints.txt infra/setup/install_redis.sh infra/setup/install_hostbed_tools.sh infra/setup/install_monitoring_tools.sh
	bash infra/setup/bootstrap.sh
	touch $(VENV_STAMP)

demo: venv
	$(PY) jobs/demo.py

# The multi-host bed tests run in a pytest process of their own, after the rest: five Ray-and-
# server hosts on 2 cores want a quiet machine, without the session's local Ray and moto server.
test: venv
	$(PY) -m pytest -m "not multihost"
	$(PY) -m pytest -m multihost

# A local Prometheus (127.0.0.1:9090, data under out/monitor/) scraping Ray's discovery file and
# the alert rules; run jobs with CLEF_MONITORING=1 so their local Ray exports metrics. Ctrl-C stops it.
monitor: venv
	$(PY) jobs/monitor.py

bench: venv
	$(PY) benchmarks/run_all.py

clean:
	rm -rf out/ .pytest_cache
