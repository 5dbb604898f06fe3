# A small image for sluice: static binary (no cgo: SQLite is pure Go),
# non-root user. docker build -t sluice:latest .
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/sluice ./cmd/sluice

FROM debian:12-slim
RUN useradd --uid 65532 --no-create-home sluice && mkdir -p /var/lib/sluice && chown 65532 /var/lib/sluice
COPY --from=build /out/sluice /usr/local/bin/sluice
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/sluice"]
CMD ["serve", "--addr", "0.0.0.0:8080", "--data", "/var/lib/sluice"]
