//! filled by the PKI work
