//! filled by the mosquitto work
