//! Parser throughput on typical request lines.

use atlas::protocol::parse_request;
use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};

fn parser(c: &mut Criterion) {
    let lines: Vec<(&str, Vec<u8>)> = vec![
        ("get", b"KEY GET users.alice".to_vec()),
        (
            "put_100b",
            format!("KEY PUT users.alice {}", "v".repeat(100)).into_bytes(),
        ),
        (
            "put_worm_tagged",
            b"[ID:42] KEY PUT logs.x PRINCIPAL auditor WORM TTL 2h45m payload".to_vec(),
        ),
        ("acl", b"ACL GRANT users.alice bob PERMS READ".to_vec()),
    ];
    let mut group = c.benchmark_group("parse_request");
    for (name, line) in &lines {
        group.throughput(Throughput::Bytes(line.len() as u64));
        group.bench_function(*name, |b| b.iter(|| parse_request(black_box(line))));
    }
    group.finish();
}

criterion_group!(benches, parser);
criterion_main!(benches);
