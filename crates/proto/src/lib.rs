//! gRPC contracts, generated from `proto/` by tonic and prost.

#![allow(
    missing_debug_implementations,
    clippy::unwrap_used,
    reason = "generated code"
)]

pub mod intake {
    pub mod v1 {
        tonic::include_proto!("mskflow.intake.v1");
    }
}

pub mod assessment {
    pub mod v1 {
        tonic::include_proto!("mskflow.assessment.v1");
    }
}

pub mod scheduling {
    pub mod v1 {
        tonic::include_proto!("mskflow.scheduling.v1");
    }
}

pub mod outcomes {
    pub mod v1 {
        tonic::include_proto!("mskflow.outcomes.v1");
    }
}

pub mod convert;

/// A gRPC server with server reflection (v1 and v1alpha) for every mskflow
/// contract, so standard tools can list and call the services; add the
/// service itself to the returned router.
pub fn server_with_reflection()
-> Result<tonic::transport::server::Router, tonic_reflection::server::Error> {
    let v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    Ok(tonic::transport::Server::builder()
        .add_service(v1)
        .add_service(v1alpha))
}

/// Encoded file descriptor set of every service, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("mskflow_descriptor");

/// gRPC metadata key carrying the id of an existing referral on `ALREADY_EXISTS`.
pub const REFERRAL_ID_METADATA: &str = "x-mskflow-referral-id";
