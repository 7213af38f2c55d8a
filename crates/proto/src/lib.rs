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

/// Encoded file descriptor set of every service, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("mskflow_descriptor");

/// gRPC metadata key carrying the id of an existing referral on `ALREADY_EXISTS`.
pub const REFERRAL_ID_METADATA: &str = "x-mskflow-referral-id";
