# linkwatch in a small image, run as a non-root user. Build: docker build -t linkwatch .
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY migrations migrations
RUN cargo build --release --locked && strip target/release/linkwatch

FROM debian:bookworm-slim
# ca-certificates: rustls verifies servers against the platform's roots.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/linkwatch --create-home linkwatch
COPY --from=build /src/target/release/linkwatch /usr/local/bin/linkwatch
USER linkwatch
VOLUME /var/lib/linkwatch
EXPOSE 9187
ENTRYPOINT ["linkwatch"]
CMD ["run", "--config", "/etc/linkwatch/linkwatch.toml"]
