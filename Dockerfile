# syntax=docker/dockerfile:1
# The console's browser files, from npm by the lock file (scripts/build-console.sh).
FROM node:20-bookworm-slim AS console
WORKDIR /src
COPY console ./console
COPY scripts/build-console.sh ./scripts/
RUN mkdir -p app/console && bash scripts/build-console.sh

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/dockyard
COPY pyproject.toml README.md* ./
COPY app ./app
COPY --from=console /src/app/console/dist ./app/console/dist
RUN /opt/dockyard/bin/pip install .

FROM python:3.11-slim
ENV PATH=/opt/dockyard/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 dockyard \
 && useradd --system --uid 10001 --gid dockyard --no-create-home --shell /usr/sbin/nologin dockyard
COPY --from=build /opt/dockyard /opt/dockyard
USER 10001:10001
EXPOSE 8000
ENTRYPOINT ["dockyard"]
CMD ["serve", "--host", "0.0.0.0"]
