FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY gateway gateway
COPY policies policies
COPY engines engines
COPY migrations migrations
COPY examples examples
RUN pip install --no-cache-dir . && useradd --uid 10001 tiergate
USER tiergate
EXPOSE 8080
ENTRYPOINT ["tiergate"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
