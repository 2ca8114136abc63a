//! A user's own Pingora proxy with Atlas embedded.
//!
//! The proxy's YAML file gains an `atlas:` section; `main` gains two lines
//! (`install_embedded` and `try_serve` in `request_filter`). Everything else is the user's:
//! here a plaintext listener (`EMBED_LISTEN`, default 127.0.0.1:6188) that proxies every
//! other request to `EMBED_UPSTREAM` (default 127.0.0.1:8080).
//!
//! Run: `cargo run --release -p atlas-pingora --example embed -- -c proxy.yaml`

use std::sync::Arc;

use async_trait::async_trait;
use atlas::AtlasConfig;
use atlas_pingora::Atlas;
use pingora::prelude::{HttpPeer, Opt};
use pingora::proxy::{ProxyHttp, Session, http_proxy_service};
use pingora::server::Server;

struct UserProxy {
    atlas: Arc<Atlas>,
    upstream: String,
}

#[async_trait]
impl ProxyHttp for UserProxy {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> pingora::Result<bool> {
        // Atlas answers its own paths (/atlas/…, /api/…, /metrics); the rest is ours.
        self.atlas.try_serve(session).await
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() {
    let opt = Opt::parse_args();
    let conf_path = opt.conf.clone();
    // Pingora reads its own keys from the file and ignores the `atlas:` section.
    let mut server = Server::new(Some(opt)).expect("pingora configuration");
    server.bootstrap();

    let atlas_config = match conf_path {
        Some(path) => AtlasConfig::load(std::path::Path::new(&path)).unwrap_or_else(|e| {
            eprintln!("{e}");
            std::process::exit(2);
        }),
        None => AtlasConfig::default(),
    };
    let atlas = Arc::new(
        atlas_pingora::install_embedded(&mut server, &atlas_config).unwrap_or_else(|e| {
            eprintln!("{e}");
            std::process::exit(2);
        }),
    );

    let proxy = UserProxy {
        atlas: atlas.clone(),
        upstream: std::env::var("EMBED_UPSTREAM").unwrap_or_else(|_| "127.0.0.1:8080".into()),
    };
    let mut service = http_proxy_service(&server.configuration, proxy);
    service.add_tcp(&std::env::var("EMBED_LISTEN").unwrap_or_else(|_| "127.0.0.1:6188".into()));
    server.add_service(service);
    server.run(pingora::server::RunArgs::default());
    atlas.close();
    if atlas.failure().is_some() {
        std::process::exit(2);
    }
}
