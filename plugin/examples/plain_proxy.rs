//! The baseline of the edge benchmark: Pingora's plain reverse proxy, as its own examples
//! build it — one TLS listener (HTTP/2 and HTTP/1.1) sending every request to one upstream,
//! no router, no metrics, no header rewriting — on the same two worker threads as Atlas.
//! `atlas-compare --only edge` runs it beside Atlas's route to tell what Atlas adds over
//! Pingora from what Pingora costs against nginx.
//!
//! Run: `plain_proxy LISTEN UPSTREAM CERT KEY` (e.g. `127.0.0.1:8443 127.0.0.1:8080 c.pem k.pem`).

use async_trait::async_trait;
use pingora::listeners::tls::TlsSettings;
use pingora::prelude::{HttpPeer, Opt};
use pingora::proxy::{ProxyHttp, Session, http_proxy_service};
use pingora::server::Server;
use pingora::server::configuration::ServerConf;

struct PlainProxy {
    upstream: String,
}

#[async_trait]
impl ProxyHttp for PlainProxy {
    type CTX = ();

    fn new_ctx(&self) {}

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
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, upstream, cert, key] = args.as_slice() else {
        eprintln!("usage: plain_proxy LISTEN UPSTREAM CERT KEY");
        std::process::exit(2);
    };
    let conf = ServerConf {
        threads: 2,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(Opt::default(), conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(
        &server.configuration,
        PlainProxy {
            upstream: upstream.clone(),
        },
    );
    let mut tls = TlsSettings::intermediate(cert, key).expect("certificate and key");
    tls.enable_h2();
    proxy.add_tls_with_settings(listen, None, tls);
    server.add_service(proxy);
    server.run_forever();
}
