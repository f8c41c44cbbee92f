//! The OTLP collector services over gRPC (`LogsService/Export`, `TraceService/Export`),
//! served from the message's bytes instead of through the generated `LogsServiceServer` and
//! `TraceServiceServer`: those decode the whole request into prost structs before any
//! handler runs, and an export is counted ([`crate::api::otlp_count`]) before it is decoded,
//! as on OTLP/HTTP. Only the codec differs from the generated servers: the same tonic
//! `Grpc` machinery reads, decompresses (gzip) and bounds the message.

use prost::Message;
use prost::bytes::{Buf, BufMut, Bytes};
use tonic::codec::{
    Codec, CompressionEncoding, DecodeBuf, Decoder, EnabledCompressionEncodings, EncodeBuf, Encoder,
};
use tonic::codegen::{BoxFuture, Context, Poll, Service, StdError, http};
use tonic::server::{NamedService, UnaryService};
use tonic::{Request, Response, Status};

use super::telemetry::{Telemetry, check_counts};
use crate::api::otlp::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use crate::api::otlp::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use crate::api::otlp_count::{self, Signal};
use crate::server::auth::{Action, authorize};

/// `opentelemetry.proto.collector.logs.v1.LogsService`, read from raw bytes.
#[derive(Clone)]
pub struct LogsServer(Export);

/// `opentelemetry.proto.collector.trace.v1.TraceService`, read from raw bytes.
#[derive(Clone)]
pub struct TracesServer(Export);

impl LogsServer {
    /// Serves `telemetry`'s log intake; messages (decompressed) are at most `max_message`
    /// bytes.
    pub fn new(telemetry: Telemetry, max_message: usize) -> Self {
        Self(Export {
            telemetry,
            signal: Signal::Logs,
            max_message,
        })
    }
}

impl TracesServer {
    /// Serves `telemetry`'s span intake, as [`LogsServer::new`].
    pub fn new(telemetry: Telemetry, max_message: usize) -> Self {
        Self(Export {
            telemetry,
            signal: Signal::Traces,
            max_message,
        })
    }
}

impl NamedService for LogsServer {
    const NAME: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
}

impl NamedService for TracesServer {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

/// One collector service: its one method, `Export`.
#[derive(Clone)]
struct Export {
    telemetry: Telemetry,
    signal: Signal,
    max_message: usize,
}

impl Export {
    fn path(&self) -> &'static str {
        match self.signal {
            Signal::Logs => "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
            Signal::Traces => "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
        }
    }

    /// Answers one HTTP/2 request: `Export`, or `UNIMPLEMENTED` for any other method.
    fn call<B>(
        &self,
        request: http::Request<B>,
    ) -> BoxFuture<http::Response<tonic::body::Body>, std::convert::Infallible>
    where
        B: tonic::codegen::Body + Send + 'static,
        B::Error: Into<StdError> + Send + 'static,
    {
        if request.uri().path() != self.path() {
            return Box::pin(
                async move { Ok(Status::unimplemented("unknown method").into_http()) },
            );
        }
        let export = self.clone();
        // The official SDK gzips every call on a secure (`https://`) channel.
        let mut accepted = EnabledCompressionEncodings::default();
        accepted.enable(CompressionEncoding::Gzip);
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(RawCodec)
                .apply_compression_config(accepted, EnabledCompressionEncodings::default())
                .apply_max_message_size_config(Some(export.max_message), None);
            Ok(grpc.unary(export, request).await)
        })
    }

    async fn export(&self, request: Request<Bytes>) -> Result<Response<Bytes>, Status> {
        authorize(&request, Action::WriteTelemetry)?;
        let body = request.into_inner();
        let limits = self.telemetry.limits();
        check_counts(
            limits,
            self.signal,
            &otlp_count::count_protobuf(&body, self.signal),
        )?;
        // Both responses are empty when everything was stored (no `partial_success`).
        match self.signal {
            Signal::Logs => {
                let request = ExportLogsServiceRequest::decode(body).map_err(undecodable)?;
                self.telemetry.ingest_logs(request).await?;
                Ok(Response::new(
                    ExportLogsServiceResponse::default().encode_to_vec().into(),
                ))
            }
            Signal::Traces => {
                let request = ExportTraceServiceRequest::decode(body).map_err(undecodable)?;
                self.telemetry.ingest_spans(request).await?;
                Ok(Response::new(
                    ExportTraceServiceResponse::default().encode_to_vec().into(),
                ))
            }
        }
    }
}

fn undecodable(error: prost::DecodeError) -> Status {
    Status::invalid_argument(format!("undecodable export request: {error}"))
}

impl UnaryService<Bytes> for Export {
    type Response = Bytes;
    type Future = BoxFuture<Response<Bytes>, Status>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let export = self.clone();
        Box::pin(async move { export.export(request).await })
    }
}

macro_rules! service {
    ($server:ty) => {
        impl<B> Service<http::Request<B>> for $server
        where
            B: tonic::codegen::Body + Send + 'static,
            B::Error: Into<StdError> + Send + 'static,
        {
            type Response = http::Response<tonic::body::Body>;
            type Error = std::convert::Infallible;
            type Future = BoxFuture<Self::Response, Self::Error>;

            fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
                Poll::Ready(Ok(()))
            }

            fn call(&mut self, request: http::Request<B>) -> Self::Future {
                self.0.call(request)
            }
        }
    };
}

service!(LogsServer);
service!(TracesServer);

/// A message's bytes as they are, both ways (decompressed and bounded by tonic); public
/// for clients that send bytes no prost struct could hold cheaply (the hostile tests).
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, destination: &mut EncodeBuf<'_>) -> Result<(), Status> {
        destination.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, source: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(source.copy_to_bytes(source.remaining())))
    }
}
