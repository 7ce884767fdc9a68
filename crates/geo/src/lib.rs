//! Geography for the balancer: coordinates and great-circle distance.
//!
//! This crate does no network I/O. MaxMind lookups and the ranking of candidate
//! servers arrive with the geo issue; what lives here now is what the fleet
//! configuration already needs: a validated point on the globe.

use serde::{Deserialize, Serialize};

/// Mean Earth radius in kilometres (IUGG), used for great-circle distances.
const EARTH_RADIUS_KM: f64 = 6371.0088;

/// A point on the globe in decimal degrees.
///
/// Constructed through [`Coordinates::new`], which rejects values outside the
/// valid ranges, so a `Coordinates` never holds NaN or an impossible latitude.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawCoordinates", into = "RawCoordinates")]
pub struct Coordinates {
    lat: f64,
    lon: f64,
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
        Ok(Self { lat, lon })
    }

    /// Latitude in decimal degrees, north positive.
    pub fn lat(self) -> f64 {
        self.lat
    }

    /// Longitude in decimal degrees, east positive.
    pub fn lon(self) -> f64 {
        self.lon
    }

    /// Great-circle distance to `other` in kilometres (haversine formula).
    pub fn distance_km(self, other: Coordinates) -> f64 {
        let (lat1, lat2) = (self.lat.to_radians(), other.lat.to_radians());
        let dlat = lat2 - lat1;
        let dlon = (other.lon - self.lon).to_radians();
        let a = (dlat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (dlon / 2.0).sin().powi(2);
        2.0 * EARTH_RADIUS_KM * a.sqrt().min(1.0).asin()
    }
}

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
    }
}
