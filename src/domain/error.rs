//! Why a value was refused at the edge. Each kind has a stable code, the same the API answers with.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("field `{0}` is not valid standard base64")]
    BadBase64(&'static str),
    #[error("field `{0}` has the wrong length")]
    InvalidKeyLength(&'static str),
    #[error("field `{0}` has the wrong key type byte")]
    InvalidKeyType(&'static str),
    #[error("registrationId must be in 1..=16380")]
    InvalidRegistrationId,
    #[error("deviceSecret must be 32 to 64 bytes")]
    InvalidDeviceSecret,
}

impl DomainError {
    /// The stable, machine-readable reason (the API's `code`).
    pub fn code(&self) -> &'static str {
        match self {
            DomainError::BadBase64(_) => "bad_base64",
            DomainError::InvalidKeyLength(_) => "invalid_key_length",
            DomainError::InvalidKeyType(_) => "invalid_key_type",
            DomainError::InvalidRegistrationId => "invalid_registration_id",
            DomainError::InvalidDeviceSecret => "invalid_device_secret",
        }
    }
}
