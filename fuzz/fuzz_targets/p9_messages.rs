//! 9P parser and server: `parse_request` on the raw input, then a `NinePServer` over a
//! `MemoryShare` that is versioned and attached (fid 0 = root) and then fed the input as records
//! (`cvmm_fuzz::records`). A record with flag bit 0 clear gets a correct size field prepended
//! (its bytes are `type tag body`); with bit 0 set it is passed raw. Every reply must be well
//! formed: size field equal to its length, within msize, an R-message type.
#![no_main]

use cvmm_fuzz::p9::{check_reply, tattach, tversion, with_size};
use devices::p9::{parse_request, MemoryShare, NinePConfig, NinePServer, Share};
use libfuzzer_sys::fuzz_target;

fn server() -> NinePServer {
    let share = MemoryShare::new()
        .with_file("environment", b"COCOS=1\nA=2\n".to_vec(), 0o644)
        .and_then(|s| s.with_file("ca.pem", vec![b'x'; 9000], 0o600))
        .and_then(|s| s.with_file("empty", Vec::new(), 0o644))
        .expect("static share contents are valid");
    let config = NinePConfig {
        max_msize: 64 * 1024,
        max_fids: 64,
    };
    NinePServer::new(Share::Memory(share), config)
}

fuzz_target!(|data: &[u8]| {
    let _ = parse_request(data);

    let mut srv = server();
    let mut out = Vec::new();
    for setup in [tversion(16 * 1024), tattach(0)] {
        srv.handle(&setup, &mut out);
        if let Err(e) = check_reply(&out, srv.msize()) {
            panic!("setup reply malformed: {e}");
        }
    }
    for (flags, rec) in cvmm_fuzz::records(data) {
        let msg = if flags & 1 == 0 {
            with_size(rec)
        } else {
            rec.to_vec()
        };
        srv.handle(&msg, &mut out);
        if let Err(e) = check_reply(&out, srv.msize()) {
            panic!("reply to {msg:02x?} malformed: {e}");
        }
    }
});
