//! Integration tests: one binary, one module per area. They run the real `stratus` binary
//! against real parts: local node processes with the embedded SSH server, OpenSSH's sshd, and
//! (in `ec2` and `hardening_ec2`) moto's EC2 server, the latter with EC2's faults injected.

mod accounting;
mod bench_class;
mod cli;
mod clock;
mod doubles;
mod ec2;
mod hadoop_profile;
mod hardening_ec2;
mod hardening_local;
mod iam;
mod identities;
mod image;
mod local;
mod openssh;
mod preflight;
mod privileged;
mod service;
mod support;
mod trial;
mod waits;
