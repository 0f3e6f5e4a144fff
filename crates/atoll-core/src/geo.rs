//! Geography: great-circle distances between coordinates (for the latency model of `atoll link`
//! and the nearest-region choice of the router).

/// Mean Earth radius in kilometres.
pub const EARTH_RADIUS_KM: f64 = 6371.0;

/// Great-circle (haversine) distance in kilometres between two points given in degrees.
pub fn great_circle_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = (lat2 - lat1).to_radians();
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * a.sqrt().min(1.0).asin()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_distances() {
        // N. Virginia to Dublin is about 5,450 km; Dublin to Singapore about 11,200 km.
        let d = great_circle_km(38.9, -77.4, 53.3, -6.3);
        assert!((5300.0..5600.0).contains(&d), "{d}");
        let d = great_circle_km(53.3, -6.3, 1.35, 103.8);
        assert!((11_000.0..11_400.0).contains(&d), "{d}");
        assert_eq!(great_circle_km(10.0, 20.0, 10.0, 20.0), 0.0);
    }
}
