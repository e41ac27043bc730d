"""Settings an administrator may read: `GET /api/v1/admin/settings` (admin).

Only what the administration page shows, read-only: settings come from the environment, so
changing one is a deployment's business, not a request's.
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic import BaseModel

from app.deps import AdminUser, SettingsDep, read_only

router = APIRouter(tags=["admin"])


class AdminSettingsOut(BaseModel):
    recordings_retention_days: int


@router.get("/admin/settings", response_model=AdminSettingsOut)
@read_only
async def admin_settings(settings: SettingsDep, _admin: AdminUser) -> AdminSettingsOut:
    return AdminSettingsOut(recordings_retention_days=settings.recordings_retention_days)
