# fer-worker and audio-worker on ONNX Runtime. Build from the repository root:
#   docker build -f compose/workers.Dockerfile .
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3-pip && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p fer-worker -p audio-worker
# The ONNX Runtime library from PyPI's wheel (the `ort` crate loads it at run time).
RUN python3 -m pip download --no-deps --only-binary=:all: --platform manylinux_2_28_x86_64 \
      --python-version 3.11 -d /tmp/ort onnxruntime==1.31.1 \
 && python3 -c "import zipfile, glob; z = zipfile.ZipFile(glob.glob('/tmp/ort/onnxruntime-*.whl')[0]); open('/libonnxruntime.so.1.31.1', 'wb').write(z.read('onnxruntime/capi/libonnxruntime.so.1.31.1'))"

FROM debian:bookworm-slim
COPY --from=build /src/target/release/fer-worker /src/target/release/audio-worker /usr/local/bin/
COPY --from=build /libonnxruntime.so.1.31.1 /usr/local/lib/libonnxruntime.so.1.31.1
COPY models /models
ENV ORT_DYLIB_PATH=/usr/local/lib/libonnxruntime.so.1.31.1 \
    ORT_DISABLE_TELEMETRY=1 \
    TAP_MODELS_DIR=/models
