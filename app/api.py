"""The `/api/v1` router: every domain's HTTP endpoints."""

from fastapi import APIRouter, Depends

from app.admin_router import router as admin_router
from app.audit_router import router as audit_router
from app.auth.router import router as auth_router
from app.validation import refuse_nul
from scheduling.chat_router import router as chat_router
from scheduling.consent_router import router as consent_router
from scheduling.guest_router import router as guest_router
from scheduling.notifications.router import router as notifications_router
from scheduling.recording_router import router as recording_router
from scheduling.router import router as scheduling_router
from scheduling.visit_router import router as visit_router
from signaling.device_check import router as device_check_router

# A NUL in a query string, header or path parameter: 422 before any dependency runs.
api_router = APIRouter(prefix="/api/v1", dependencies=[Depends(refuse_nul)])
api_router.include_router(auth_router)
api_router.include_router(admin_router)
api_router.include_router(audit_router)
api_router.include_router(scheduling_router)
api_router.include_router(guest_router)
api_router.include_router(notifications_router)
api_router.include_router(visit_router)
api_router.include_router(device_check_router)
api_router.include_router(consent_router)
api_router.include_router(recording_router)
api_router.include_router(chat_router)
