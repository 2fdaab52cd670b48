//! The frame decoder: any bytes read as a stream of frames, through the
//! same reader every connection uses. It may refuse, never panic, and
//! never buffer more than what arrived.
#![no_main]

use fileshare_protocol::connection::FrameReader;
use fileshare_protocol::messages::{Request, TrackerRequest};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    rt().block_on(async {
        let mut reader = FrameReader::new(data);
        // Every frame until the first error or the end.
        for _ in 0..64 {
            match reader.read_frame::<Request<TrackerRequest>>().await {
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    });
});
