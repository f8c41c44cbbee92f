//! Generated protobuf and gRPC code for the Tilebox workflows API, and conversions.
//!
//! This is the only module that works with prost types in depth; the rest of the crate uses
//! the helpers here to move between wire values (`tilebox.v1.ID`, durations, timestamps) and
//! plain Rust values.
//!
//! Layout:
//! - `mod.rs`: the generated packages (`tilebox::v1`, `workflows::v1`)
//! - `convert.rs`: ids, timestamps, durations, state names
//! - `submission.rs`: validating and flattening task submissions (the server's rules)
//! - `limits.rs`: the limits one request may reach (lengths, counts, version range)
//! - `otlp_json.rs`: OTLP/JSON export requests decoded into the OTLP prost types
//! - `otlp_count.rs`: counting what an OTLP export decodes into, before decoding it

pub mod convert;
pub mod limits;
pub mod otlp_count;
pub mod otlp_json;
pub mod submission;

/// Metadata key a runner may send to name itself: late reports and lease extensions from a
/// runner that lost a task are then told apart from the current owner's. Without it the
/// server uses the connection's peer address.
pub const RUNNER_ID_HEADER: &str = "tilebox-runner-id";

/// Package `tilebox.v1`.
pub mod tilebox {
    pub mod v1 {
        tonic::include_proto!("tilebox.v1");
    }
    /// Package `tilebox.selfhosted.v1`: artifacts and deployment watches (our own).
    pub mod selfhosted {
        pub mod v1 {
            tonic::include_proto!("tilebox.selfhosted.v1");
        }
    }
}

/// The OpenTelemetry protocol (OTLP) packages.
pub mod opentelemetry {
    pub mod proto {
        pub mod common {
            pub mod v1 {
                tonic::include_proto!("opentelemetry.proto.common.v1");
            }
        }
        pub mod resource {
            pub mod v1 {
                tonic::include_proto!("opentelemetry.proto.resource.v1");
            }
        }
        pub mod logs {
            pub mod v1 {
                tonic::include_proto!("opentelemetry.proto.logs.v1");
            }
        }
        pub mod trace {
            pub mod v1 {
                tonic::include_proto!("opentelemetry.proto.trace.v1");
            }
        }
        pub mod collector {
            pub mod logs {
                pub mod v1 {
                    tonic::include_proto!("opentelemetry.proto.collector.logs.v1");
                }
            }
            pub mod trace {
                pub mod v1 {
                    tonic::include_proto!("opentelemetry.proto.collector.trace.v1");
                }
            }
        }
    }
}

/// Package `workflows.v1`.
pub mod workflows {
    pub mod v1 {
        tonic::include_proto!("workflows.v1");
    }
}

pub use opentelemetry::proto as otlp;
pub use tilebox::selfhosted::v1 as selfhosted_v1;
pub use tilebox::v1 as tilebox_v1;
pub use workflows::v1 as workflows_v1;
