FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY models ./models
COPY worker ./worker
COPY migrations ./migrations
RUN pip install --no-cache-dir ".[ops]" && useradd --create-home outbox
USER outbox
# One image, several roles: the compose file picks the command.
CMD ["celery", "-A", "worker", "worker", "--loglevel=INFO"]
