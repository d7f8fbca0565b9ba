FROM python:3.11-slim
WORKDIR /app
# The dependencies first, in a layer of their own, read from pyproject.toml alone: a change to
# the code rebuilds only the layers below, in seconds, instead of reinstalling everything.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + [d for extra in ('postgres', 'mariadb', 'ops') for d in p['optional-dependencies'][extra]]))" > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt && rm /tmp/requirements.txt
COPY README.md ./
COPY spotler_outbox ./spotler_outbox
COPY models ./models
COPY worker ./worker
COPY migrations ./migrations
RUN pip install --no-cache-dir --no-deps . && useradd --create-home outbox
USER outbox
# One image, several roles: the check asks the role this container runs (a worker answers a
# Celery ping, Flower and the exporter answer HTTP, beat has nothing to ask).
HEALTHCHECK --interval=30s --timeout=20s --start-period=30s --retries=3 \
    CMD ["python", "-m", "spotler_outbox.worker.console.healthcheck"]
# The compose file picks the command.
CMD ["celery", "-A", "spotler_outbox.worker", "worker", "--loglevel=INFO"]
