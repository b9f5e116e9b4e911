//! Unpublished root package: owns tests/, examples/ and benches/.
