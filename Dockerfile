FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY spotler_outbox ./spotler_outbox
COPY models ./models
COPY worker ./worker
COPY migrations ./migrations
RUN pip install --no-cache-dir ".[postgres,mariadb,ops]" && useradd --create-home outbox
USER outbox
# One image, several roles: the compose file picks the command.
CMD ["celery", "-A", "spotler_outbox.worker", "worker", "--loglevel=INFO"]
