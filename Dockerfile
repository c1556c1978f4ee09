# Multi-stage build: a static sluice binary on a minimal base image.
#   docker build -t sluice .
#   docker run --rm -p 8080:8080 -p 127.0.0.1:9001:9001 sluice
# runs `sluice demo` with the config baked in below (deploy/sluice-demo.yaml):
# sluice on the embedded broker in front of the demo log store, in one
# process, with no other service. Any other config: mount it and pass
# `serve -config <path>` (docker-compose.yml does).
FROM golang:1.26-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# The version `sluice version` reports: the VERSION build arg, else what
# `git describe` says of the build context's .git (as `make build` does),
# else dev.
ARG VERSION=
RUN v="${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}" && \
    CGO_ENABLED=0 go build -trimpath -buildvcs=false -tags grpcnotrace -ldflags "-s -w -X main.version=$v" \
      -o /out/sluice ./cmd/sluice && \
    mkdir -p /out/var-lib/sluice

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/sluice /usr/local/bin/sluice
COPY schemas /etc/sluice/schemas
COPY deploy/sluice-demo.yaml /etc/sluice/deploy/sluice-demo.yaml
# The demo config's data directory, owned by the nonroot user (65532). The
# contents of /out/var-lib are copied, so sluice/ itself gets the owner.
COPY --from=build --chown=65532:65532 /out/var-lib/ /var/lib/
ENV SLUICE_CONFIG=/etc/sluice/deploy/sluice-demo.yaml
USER nonroot
# 8080: the client port; 9001: the demo log store (GET /stats). The admin
# API of the baked-in config listens inside the container only.
EXPOSE 8080 9001
ENTRYPOINT ["/usr/local/bin/sluice"]
CMD ["demo", "-backend-listen", ":9001"]
