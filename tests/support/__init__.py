"""What the tests share: builders of audit events and Falco alerts, and the
real peers they run against (a tansu Kafka broker, a gRPC Falco outputs
server, HTTP receivers, an ``eventd run`` child process, TLS files)."""
