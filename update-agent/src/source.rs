//! Payloads and channels over HTTP(S): [`drover_core::http`], with the
//! agent's name and the payload [`Source`] on top.

use std::io::Read;
use std::time::Duration;

pub use drover_core::http::{get_small, join, HttpSource, STALL_TIMEOUT};
use drover_core::slot_image::ReadAt;

use crate::apply::Source;

/// The HTTP client every request of the agent goes through (see
/// [`drover_core::http::client`]); `stall` is the config's
/// `download-stall-timeout-secs`.
pub fn client(stall: Duration) -> reqwest::Result<reqwest::blocking::Client> {
    drover_core::http::client(concat!("drover-agent/", env!("CARGO_PKG_VERSION")), stall)
}

impl Source for HttpSource {
    fn name(&self) -> String {
        self.url().to_string()
    }
    fn size(&self) -> u64 {
        HttpSource::size(self)
    }
    fn at(&self) -> &dyn ReadAt {
        self
    }
    fn stream(&mut self, offset: u64) -> std::io::Result<Box<dyn Read + Send + '_>> {
        Ok(Box::new(HttpSource::stream(self, offset)?))
    }
}
