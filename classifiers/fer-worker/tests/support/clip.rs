//! The moving-face clip, made from the committed photo (no external data): 150 frames of 320×240
//! at 15 fps in which the face is absent, slides in, zooms, pans and slides out. Shared by the
//! tracking test and the `fer` benchmark.
#![allow(dead_code)]

use std::path::Path;

pub const W: usize = 320;
pub const H: usize = 240;

/// The clip: 150 frames at 15 fps (10 s).
pub fn clip() -> Vec<Vec<u8>> {
    let src = image::open(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata")
            .join("astronaut_256.png"),
    )
    .unwrap()
    .to_rgb8();
    let lerp = |a: f32, b: f32, t: f32| a + (b - a) * t;
    (0..150)
        .map(|i| {
            let t = i as f32;
            // (left edge, top edge, side) of the photo in the frame.
            let (x, y, side) = match i {
                0..=19 => (330.0, 0.0, 240.0), // not in view
                20..=49 => (lerp(330.0, 40.0, (t - 20.0) / 30.0), 0.0, 240.0), // slides in
                50..=89 => {
                    let k = (t - 50.0) / 40.0;
                    (
                        lerp(40.0, 10.0, k),
                        lerp(0.0, -30.0, k),
                        lerp(240.0, 300.0, k),
                    ) // zoom
                }
                90..=119 => (lerp(10.0, -110.0, (t - 90.0) / 30.0), -30.0, 300.0), // pans
                _ => (lerp(-110.0, -420.0, (t - 120.0) / 30.0), -30.0, 300.0),     // leaves
            };
            compose(&src, x, y, side)
        })
        .collect()
}

fn compose(src: &image::RgbImage, x: f32, y: f32, side: f32) -> Vec<u8> {
    let mut out = vec![0u8; W * H * 3];
    for py in 0..H {
        for px in 0..W {
            // A plain wall behind the photo, slightly graded.
            let mut c = [
                120 + (py / 8) as u8,
                118 + (py / 8) as u8,
                110 + (py / 8) as u8,
            ];
            let (u, v) = ((px as f32 - x) / side, (py as f32 - y) / side);
            if (0.0..1.0).contains(&u) && (0.0..1.0).contains(&v) {
                let p = src.get_pixel((u * 256.0) as u32, (v * 256.0) as u32);
                c = p.0;
            }
            out[(py * W + px) * 3..(py * W + px) * 3 + 3].copy_from_slice(&c);
        }
    }
    out
}
