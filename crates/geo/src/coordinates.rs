//! A validated point on the globe and great-circle distance.

use serde::{Deserialize, Serialize};

/// Mean Earth radius in kilometres (IUGG), used for great-circle distances.
const EARTH_RADIUS_KM: f64 = 6371.0088;

/// A point on the globe in decimal degrees.
///
/// Constructed through [`Coordinates::new`], which rejects values outside the
/// valid ranges, so a `Coordinates` never holds NaN or an impossible latitude.
/// It also keeps the point's unit vector, so comparing distances costs a dot
/// product instead of trigonometry (ranking compares many).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(try_from = "RawCoordinates", into = "RawCoordinates")]
pub struct Coordinates {
    lat: f64,
    lon: f64,
    unit: [f64; 3],
}

impl PartialEq for Coordinates {
    fn eq(&self, other: &Self) -> bool {
        self.lat == other.lat && self.lon == other.lon
    }
}

/// Why a pair of numbers is not a place.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CoordinatesError {
    /// Latitude must lie in -90..=90.
    #[error("latitude {0} is outside -90..=90")]
    Latitude(f64),
    /// Longitude must lie in -180..=180.
    #[error("longitude {0} is outside -180..=180")]
    Longitude(f64),
}

impl Coordinates {
    /// A point from latitude and longitude in decimal degrees.
    pub fn new(lat: f64, lon: f64) -> Result<Self, CoordinatesError> {
        if !(-90.0..=90.0).contains(&lat) {
            return Err(CoordinatesError::Latitude(lat));
        }
        if !(-180.0..=180.0).contains(&lon) {
            return Err(CoordinatesError::Longitude(lon));
        }
        let (phi, lambda) = (lat.to_radians(), lon.to_radians());
        let unit = [
            phi.cos() * lambda.cos(),
            phi.cos() * lambda.sin(),
            phi.sin(),
        ];
        Ok(Self { lat, lon, unit })
    }

    /// Latitude in decimal degrees, north positive.
    pub fn lat(self) -> f64 {
        self.lat
    }

    /// Longitude in decimal degrees, east positive.
    pub fn lon(self) -> f64 {
        self.lon
    }

    /// Great-circle distance to `other` in kilometres.
    pub fn distance_km(self, other: Coordinates) -> f64 {
        chord_to_km(self.chord_squared(other))
    }

    /// The squared straight-line distance between the points on a unit sphere:
    /// grows with the great-circle distance, so it orders points the same way,
    /// for three multiplications.
    pub fn chord_squared(self, other: Coordinates) -> f64 {
        let [a, b, c] = self.unit;
        let [x, y, z] = other.unit;
        (a - x).powi(2) + (b - y).powi(2) + (c - z).powi(2)
    }
}

/// Great-circle kilometres for a squared unit chord.
pub(crate) fn chord_to_km(chord_squared: f64) -> f64 {
    2.0 * EARTH_RADIUS_KM * (chord_squared.sqrt() / 2.0).min(1.0).asin()
}

/// The squared unit chord for a great-circle distance in kilometres.
pub(crate) fn km_to_chord(km: f64) -> f64 {
    let half_angle = (km / (2.0 * EARTH_RADIUS_KM)).min(std::f64::consts::FRAC_PI_2);
    (2.0 * half_angle.sin()).powi(2)
}

impl Coordinates {}

/// The serialized shape, `{ lat = .., lon = .. }`, checked on the way in.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCoordinates {
    lat: f64,
    lon: f64,
}

impl TryFrom<RawCoordinates> for Coordinates {
    type Error = CoordinatesError;
    fn try_from(raw: RawCoordinates) -> Result<Self, Self::Error> {
        Coordinates::new(raw.lat, raw.lon)
    }
}

impl From<Coordinates> for RawCoordinates {
    fn from(c: Coordinates) -> Self {
        RawCoordinates {
            lat: c.lat,
            lon: c.lon,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_out_of_range_and_nan() {
        assert_eq!(
            Coordinates::new(91.0, 0.0),
            Err(CoordinatesError::Latitude(91.0))
        );
        assert_eq!(
            Coordinates::new(0.0, -180.5),
            Err(CoordinatesError::Longitude(-180.5))
        );
        assert!(Coordinates::new(f64::NAN, 0.0).is_err());
        assert!(Coordinates::new(0.0, f64::NAN).is_err());
    }

    #[test]
    fn distance_between_known_cities() {
        let vienna = Coordinates::new(48.21, 16.37).unwrap();
        let graz = Coordinates::new(47.07, 15.44).unwrap();
        let sydney = Coordinates::new(-33.87, 151.21).unwrap();
        let d = vienna.distance_km(graz);
        assert!(
            (140.0..150.0).contains(&d),
            "Vienna-Graz is about 145 km, got {d}"
        );
        let d = vienna.distance_km(sydney);
        assert!(
            (15_900.0..16_100.0).contains(&d),
            "Vienna-Sydney is about 15,990 km, got {d}"
        );
        assert_eq!(vienna.distance_km(vienna), 0.0);
        let antipode = Coordinates::new(-48.21, 16.37 - 180.0).unwrap();
        assert!((vienna.distance_km(antipode) - 20_015.0).abs() < 5.0);
    }

    #[test]
    fn chords_order_like_distances_and_convert_back() {
        let vienna = Coordinates::new(48.21, 16.37).unwrap();
        let graz = Coordinates::new(47.07, 15.44).unwrap();
        let tokyo = Coordinates::new(35.68, 139.69).unwrap();
        assert!(vienna.chord_squared(graz) < vienna.chord_squared(tokyo));
        for km in [0.0, 1.0, 145.0, 9_000.0, 20_000.0] {
            assert!(
                (chord_to_km(km_to_chord(km)) - km).abs() < 1e-6 * km.max(1.0),
                "{km}"
            );
        }
    }
}
