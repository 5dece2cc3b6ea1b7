//! Addresses of the local stack, overridable like the services' own settings.

use std::net::TcpStream;
use std::time::Duration;

pub fn kafka_brokers() -> String {
    std::env::var("URNA_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

pub fn redis_url() -> String {
    std::env::var("URNA_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub fn mongo_url() -> String {
    std::env::var("URNA_MONGO_URL").unwrap_or_else(|_| "mongodb://127.0.0.1:27017".into())
}

/// Fails the test at once, saying what to do, when a stack service does not listen.
pub fn require(service: &str, url: &str) {
    let authority = url
        .split("://")
        .last()
        .unwrap_or(url)
        .split(['/', ','])
        .next()
        .unwrap_or(url);
    let addr = authority
        .parse()
        .unwrap_or_else(|e| panic!("{service} address {authority:?}: {e}"));
    if TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err() {
        panic!(
            "{service} is not listening on {authority}: start the local stack with `make stack-up`"
        );
    }
}

/// Requires Kafka, Redis and Mongo.
pub fn require_all() {
    require("Kafka", &kafka_brokers());
    require("Redis", &redis_url());
    require("MongoDB", &mongo_url());
}
