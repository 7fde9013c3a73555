# The webhook app and its worker: one image, two commands (see docker-compose.yml).
#   docker build -t lc-hybrid-memory .
#   docker run -e DATABASE_URL=... -e REDIS_URL=... -p 8000:8000 lc-hybrid-memory
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Extras of the app's distribution (app/pyproject.toml), e.g. --build-arg EXTRAS=openai
# (model providers: openai, anthropic, ollama). The embedded dev servers are not installed.
ARG EXTRAS=

WORKDIR /srv
COPY pyproject.toml README.md ./
COPY lc_hybrid_memory ./lc_hybrid_memory
COPY app ./app
# The library's distribution, then the app's (which depends on it) from the same sources.
RUN pip install . "./app${EXTRAS:+[${EXTRAS}]}" \
    && useradd --system --uid 10001 --home-dir /srv --shell /usr/sbin/nologin app \
    && mkdir -p /srv/.data && chown app /srv/.data

USER app
ENV HOST=0.0.0.0 \
    PORT=8000 \
    LOG_FORMAT=json \
    HYBRID_MEMORY_DATA_DIR=/srv/.data
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen(f'http://127.0.0.1:{os.environ[\"PORT\"]}/healthz', timeout=2)"

# One gunicorn worker process with threads per container: /metrics then covers the whole
# container (Prometheus counters are per process); scale with more containers.
CMD ["hybrid-memory", "serve", "--production", "--workers", "1"]
