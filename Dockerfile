# The gateway image: the wheel built from the sources, installed non-editable (as
# tests/deploy/test_installed_wheel.py installs it), run as a non-root user with nothing
# written outside /tmp and /var/lib/tiergate, so the root filesystem can be read-only.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY policies policies
COPY engines engines
RUN pip wheel --no-cache-dir --no-deps -w /dist .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=build /dist /dist
RUN pip install --no-cache-dir /dist/tiergate-*.whl && rm -rf /dist \
 && useradd --uid 10001 --user-group --no-create-home --home-dir /var/lib/tiergate tiergate \
 && install -d -o 10001 -g 10001 /var/lib/tiergate
# The working directory holds what the defaults write: the embedded SQLite ledger
# (./var/tiergate.db) and the outage spool (./var/spool). Mount a volume here (or point
# TIERGATE_DATABASE_URL / TIERGATE_SPOOL_DIR elsewhere) when the root filesystem is read-only.
WORKDIR /var/lib/tiergate
VOLUME ["/var/lib/tiergate"]
# Numeric, so that Kubernetes can check runAsNonRoot against the image.
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["tiergate"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
