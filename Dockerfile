# syntax=docker/dockerfile:1
# Build: docker build -t televisit .
# Run:   docker run -p 8000:8000 -v televisit-data:/data -e TELEVISIT_SECRET_KEY=... \
#            -e TELEVISIT_PUBLIC_URL=https://televisit.example.org televisit
# Everything the service writes (the SQLite database, call recordings) lives under /data, a
# volume: mount one there to keep it across containers. Production refuses a PUBLIC_URL on
# loopback (the default), since visit links are built from it.

FROM python:3.11-slim AS build
WORKDIR /src
RUN python -m venv /opt/televisit
ENV PATH=/opt/televisit/bin:$PATH
COPY pyproject.toml README.md alembic.ini ./
COPY app ./app
COPY scheduling ./scheduling
COPY signaling ./signaling
COPY media ./media
COPY migrations ./migrations
RUN pip install --no-cache-dir --upgrade pip && pip install --no-cache-dir .

FROM python:3.11-slim AS runtime
# No compilers or build files here: only the virtual environment built above.
RUN groupadd --system televisit && useradd --system --gid televisit --home /data televisit \
    && mkdir -p /data && chown televisit:televisit /data
COPY --from=build /opt/televisit /opt/televisit
ENV PATH=/opt/televisit/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TELEVISIT_ENVIRONMENT=production \
    TELEVISIT_DATABASE_URL=sqlite+aiosqlite:////data/televisit.db \
    TELEVISIT_RECORDINGS_DIR=/data/recordings
# Declared after the folder is made and owned: a new volume starts with that owner.
VOLUME ["/data"]
USER televisit
WORKDIR /data
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
CMD ["televisit", "serve", "--host", "0.0.0.0", "--port", "8000"]
