# One image for the consumer and the rollup (and migrations): the workspace, installed with uv.
#   docker build -t biz2bricks-usage .
#   docker run biz2bricks-usage biz2bricks-consumer          (the default command)
#   docker run biz2bricks-usage biz2bricks-rollup run
#   docker run biz2bricks-usage alembic upgrade head
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    UV_LINK_MODE=copy \
    UV_COMPILE_BYTECODE=1 \
    UV_PROJECT_ENVIRONMENT=/app/.venv \
    PATH=/app/.venv/bin:$PATH \
    PORT=8080

RUN pip install --no-cache-dir uv==0.13.9 \
    && useradd --create-home --uid 10001 app
WORKDIR /app

# Dependencies first (cached across code changes), then the workspace members.
COPY pyproject.toml uv.lock ./
COPY shared_models/pyproject.toml shared_models/README.md shared_models/
COPY producer/pyproject.toml producer/README.md producer/
COPY consumer/pyproject.toml consumer/README.md consumer/
COPY rollup/pyproject.toml rollup/README.md rollup/
COPY fastapi_integration/pyproject.toml fastapi_integration/README.md fastapi_integration/
# devtools is a dev-only workspace member (never installed here); uv reads its metadata.
COPY devtools/pyproject.toml devtools/README.md devtools/
RUN uv sync --locked --no-dev --no-install-workspace

COPY shared_models shared_models
COPY producer producer
COPY consumer consumer
COPY rollup rollup
COPY fastapi_integration fastapi_integration
COPY alembic.ini ./
COPY migrations migrations
RUN uv sync --locked --no-dev

USER app
EXPOSE 8080
CMD ["biz2bricks-consumer"]
